//! Participant replication (BEHAVIOUR §6) through the control plane and the live plane,
//! with the SQLite store in memory, the fake media plane and virtual time:
//! preconditions and their errors, the replica in the destination, every way a
//! replication stops, and the reconnect window.

use std::sync::Arc;
use std::time::Duration;

use onstage_stage::live::{LiveConfig, LivePlane};
use onstage_stage::media::{CloseCause, MediaSignal, SourceId};
use onstage_stage::model::{
    Attributes, EventName, ParticipantState, ReplicationState, ReplicationType, Stage, StopReason,
};
use onstage_stage::service::{NewStage, ReplicationRequest, TokenRequest};
use onstage_stage::{ControlPlane, DomainError};
use onstage_testkit::{
    FakeMedia, ManualClock, MediaCall, TestStore, account, control_plane, eventually,
};

struct World {
    store: Arc<TestStore>,
    media: Arc<FakeMedia>,
    clock: Arc<ManualClock>,
    control: Arc<ControlPlane>,
    live: Arc<LivePlane>,
    a: Stage,
    b: Stage,
}

async fn world() -> World {
    let store = Arc::new(TestStore::new().await);
    let media = Arc::new(FakeMedia::default());
    let clock = ManualClock::new();
    let control = control_plane(store.clone(), clock.clone()).await;
    let live = LivePlane::open(control.clone(), media.clone(), LiveConfig::default())
        .await
        .unwrap();
    let a = control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap()
        .0;
    let b = control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap()
        .0;
    World {
        store,
        media,
        clock,
        control,
        live,
        a,
        b,
    }
}

impl World {
    async fn new_stage(&self) -> Stage {
        self.control
            .create_stage(&account(), NewStage::default())
            .await
            .unwrap()
            .0
    }

    /// A token for `stage`: (participant id, token).
    async fn token(&self, stage: &Stage) -> (String, String) {
        let issued = self
            .control
            .create_participant_token(
                &account(),
                &stage.arn.to_string(),
                TokenRequest {
                    user_id: Some("host".into()),
                    attributes: Some(Attributes::from([
                        ("name".to_owned(), "Ada".to_owned()),
                        ("role".to_owned(), "host".to_owned()),
                    ])),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        (issued.participant_id, issued.token)
    }

    /// Someone publishing in `stage`: (participant id, token).
    async fn publisher(&self, stage: &Stage) -> (String, String) {
        let (pid, token) = self.token(stage).await;
        self.live
            .publish(token.clone(), "offer".into(), None)
            .await
            .unwrap();
        (pid, token)
    }

    async fn start(
        &self,
        from: &Stage,
        to: &Stage,
        pid: &str,
        window: Option<i64>,
    ) -> Result<(), DomainError> {
        self.control
            .start_participant_replication(
                &account(),
                ReplicationRequest {
                    source_stage_arn: from.arn.to_string(),
                    destination_stage_arn: to.arn.to_string(),
                    participant_id: pid.into(),
                    reconnect_window_seconds: window,
                    attributes: Some(Attributes::from([("role".to_owned(), "guest".to_owned())])),
                },
            )
            .await
    }

    async fn stop(&self, from: &Stage, to: &Stage, pid: &str) -> Result<(), DomainError> {
        self.control
            .stop_participant_replication(
                &account(),
                &from.arn.to_string(),
                &to.arn.to_string(),
                pid,
            )
            .await
    }

    /// (destination stage id, state) of the participant's replications out of `from`.
    async fn listed(&self, from: &Stage, pid: &str) -> Vec<(String, String)> {
        self.control
            .list_participant_replicas(&account(), &from.arn.to_string(), pid, None, 50)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|r| {
                let id = r
                    .destination_stage_arn
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned();
                (id, r.replication_state.as_str().to_owned())
            })
            .collect()
    }

    fn on_stage(&self, stage: &Stage) -> Vec<(String, bool)> {
        self.live
            .stage_state(&stage.arn)
            .map(|s| {
                s.participants
                    .iter()
                    .map(|p| (p.id.clone(), p.is_publishing))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn state(id: &str, state: &str) -> (String, String) {
    (id.to_owned(), state.to_owned())
}

#[tokio::test]
async fn the_replica_is_a_publisher_of_the_destination() {
    let w = world().await;
    let (host, _) = w.publisher(&w.a).await;
    let a_session = w.store.running_session(&w.a.arn).await.unwrap();
    assert_eq!(w.store.running_session(&w.b.arn).await, None, "B is idle");

    w.start(&w.a, &w.b, &host, None).await.unwrap();

    // In B, when the call returns: a session, the replica's record, its events,
    // STAGE_STATE.
    let b_session = w
        .store
        .running_session(&w.b.arn)
        .await
        .expect("the replica started B's session");
    let replica = w.store.participant_in(&w.b.arn, &host).await.unwrap();
    assert_eq!(replica.state, ParticipantState::Connected);
    assert!(replica.published);
    assert_eq!(replica.replication_type, ReplicationType::Replica);
    assert_eq!(replica.replication_state, Some(ReplicationState::Active));
    assert_eq!(replica.source_stage_arn, Some(w.a.arn.to_string()));
    assert_eq!(
        replica.source_session_id.as_deref(),
        Some(a_session.as_str())
    );
    assert_eq!(replica.user_id.as_deref(), Some("host"));
    assert_eq!(
        replica.attributes,
        Attributes::from([
            ("name".to_owned(), "Ada".to_owned()),
            ("role".to_owned(), "guest".to_owned())
        ]),
        "the request's attributes win"
    );
    let events = w.store.events_in(&w.b.arn, &host);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.name.as_str(), e.replica))
            .collect::<Vec<_>>(),
        [("JOINED", true), ("PUBLISH_STARTED", true)]
    );
    assert_eq!(w.on_stage(&w.b), [(host.clone(), true)]);
    let b = w
        .control
        .get_stage(&account(), &w.b.arn.to_string())
        .await
        .unwrap();
    assert_eq!(b.active_session_id, Some(b_session.clone()));

    // In A: a SOURCE with REPLICATION_STARTED naming B and its session.
    let source = w.store.participant_in(&w.a.arn, &host).await.unwrap();
    assert_eq!(
        (source.replication_type, source.replication_state),
        (ReplicationType::Source, Some(ReplicationState::Active))
    );
    let started = w.store.events_in(&w.a.arn, &host).pop().unwrap();
    assert_eq!(started.name, EventName::ReplicationStarted);
    assert_eq!(started.destination_stage_arn, Some(w.b.arn.to_string()));
    assert_eq!(started.destination_session_id, Some(b_session.clone()));
    assert!(!started.replica);
    assert_eq!(w.listed(&w.a, &host).await, [state(&w.b.arn.id, "ACTIVE")]);
    let row = &w.store.replicas(&w.a.arn, &host).await[0];
    assert_eq!(
        (
            row.source_session_id.as_str(),
            row.destination_session_id.as_str()
        ),
        (a_session.as_str(), b_session.as_str())
    );
    // A keyframe is asked for.
    assert!(w.media.calls().contains(&MediaCall::Keyframe(SourceId(1))));

    // B's participants subscribe to it like a local publisher: A's source.
    let (viewer, viewer_token) = w.token(&w.b).await;
    w.live
        .subscribe(viewer_token, host.clone(), "recvonly".into(), None)
        .await
        .unwrap();
    assert!(matches!(
        w.media.calls().last(),
        Some(MediaCall::Subscribe(SourceId(1), _))
    ));
    let subscribed = w.store.events_in(&w.b.arn, &viewer).pop().unwrap();
    assert_eq!(subscribed.name, EventName::SubscribeStarted);
    assert_eq!(
        subscribed.remote_participant_id.as_deref(),
        Some(host.as_str())
    );
    assert!(subscribed.replica);
}

#[tokio::test]
async fn preconditions_answer_with_their_errors_in_order() {
    let w = world().await;
    let (host, _) = w.token(&w.a).await;
    let missing = "arn:aws:ivs:us-east-1:000000000000:stage/Zz0000000005";

    let same = w.start(&w.a, &w.a, &host, None).await.unwrap_err();
    assert!(matches!(same, DomainError::Validation(_)));
    let window = w.start(&w.a, &w.b, &host, Some(301)).await.unwrap_err();
    assert!(
        matches!(&window, DomainError::Validation(m) if m.contains("reconnectWindowSeconds")),
        "{window:?}"
    );
    let err = w
        .control
        .start_participant_replication(
            &account(),
            ReplicationRequest {
                source_stage_arn: w.a.arn.to_string(),
                destination_stage_arn: missing.into(),
                participant_id: host.clone(),
                reconnect_window_seconds: None,
                attributes: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::NotFound(m) if m.contains("Zz0000000005")),
        "{err:?}"
    );

    // Not publishing: not there at all, then only holding the events socket.
    let not_publishing = format!("participant {host} is not publishing in {}", w.a.arn);
    assert!(
        matches!(w.start(&w.a, &w.b, &host, None).await, Err(DomainError::Conflict(m)) if m == not_publishing)
    );
    let (watcher, watcher_token) = w.token(&w.a).await;
    let _events = w
        .live
        .open_events(watcher_token, w.a.arn.id.clone(), None)
        .await
        .unwrap();
    assert!(matches!(
        w.start(&w.a, &w.b, &watcher, None).await,
        Err(DomainError::Conflict(_))
    ));
    assert_eq!(
        w.live.live_stage_count(),
        1,
        "a refused start leaves no slot for B"
    );

    let (host, _) = w.publisher(&w.a).await;
    w.start(&w.a, &w.b, &host, None).await.unwrap();
    let again = w.start(&w.a, &w.b, &host, None).await.unwrap_err();
    assert!(
        matches!(&again, DomainError::Conflict(m) if m.contains("already replicated")),
        "{again:?}"
    );
    let chain = w.start(&w.b, &w.a, &host, None).await.unwrap_err();
    assert!(
        matches!(chain, DomainError::Validation(_)),
        "a replica cannot be replicated again"
    );

    for _ in 0..4 {
        let to = w.new_stage().await;
        w.start(&w.a, &to, &host, None).await.unwrap();
    }
    let sixth = w.new_stage().await;
    let quota = w.start(&w.a, &sixth, &host, None).await.unwrap_err();
    assert!(matches!(quota, DomainError::QuotaExceeded(_)), "{quota:?}");
    assert_eq!(w.listed(&w.a, &host).await.len(), 5);
}

#[tokio::test]
async fn a_replica_takes_one_of_the_twelve_publisher_slots() {
    let w = world().await;
    for _ in 0..11 {
        w.publisher(&w.b).await;
    }
    let (host, _) = w.publisher(&w.a).await;
    w.start(&w.a, &w.b, &host, None).await.unwrap();
    let (late, late_token) = w.token(&w.b).await;
    let refusal = w
        .live
        .publish(late_token, "offer".into(), None)
        .await
        .unwrap_err();
    assert_eq!(
        refusal.kind,
        onstage_stage::live::RefusalKind::QuotaExceeded
    );
    assert_eq!(
        w.store.events_with_codes(&late),
        [("PUBLISH_ERROR".into(), Some("QUOTA_EXCEEDED".into()))]
    );
    let c = w.new_stage().await;
    let (other, _) = w.publisher(&c).await;
    assert!(matches!(
        w.start(&c, &w.b, &other, None).await,
        Err(DomainError::QuotaExceeded(_))
    ));
}

#[tokio::test]
async fn stop_participant_replication_removes_the_replica() {
    let w = world().await;
    let (host, _) = w.publisher(&w.a).await;
    let missing = w.stop(&w.a, &w.b, &host).await.unwrap_err();
    assert!(matches!(missing, DomainError::NotFound(_)));
    w.start(&w.a, &w.b, &host, Some(30)).await.unwrap();
    let (_, viewer_token) = w.token(&w.b).await;
    w.live
        .subscribe(viewer_token, host.clone(), "recvonly".into(), None)
        .await
        .unwrap();
    let viewer_peer = w.media.peer(1);

    w.stop(&w.a, &w.b, &host).await.unwrap();
    // Done in B when the call returns.
    assert_eq!(
        w.store.event_names_in(&w.b.arn, &host),
        ["JOINED", "PUBLISH_STARTED", "PUBLISH_STOPPED", "LEFT"]
    );
    let replica = w.store.participant_in(&w.b.arn, &host).await.unwrap();
    assert_eq!(replica.state, ParticipantState::Disconnected);
    assert_eq!(replica.replication_state, Some(ReplicationState::Stopped));
    assert!(
        w.media.closed_peers().contains(&viewer_peer),
        "the destination subscriber's media ends"
    );
    assert!(
        w.media.closed_sources().is_empty(),
        "the host still publishes in A"
    );
    assert_eq!(
        w.store.running_session(&w.b.arn).await,
        None,
        "the last ones left B"
    );
    assert_eq!(w.on_stage(&w.b), []);

    let source = w.store.participant_in(&w.a.arn, &host).await.unwrap();
    assert_eq!(
        (source.replication_type, source.replication_state),
        (ReplicationType::Source, Some(ReplicationState::Stopped))
    );
    assert_eq!(
        w.store.events_in(&w.a.arn, &host).pop().unwrap().name,
        EventName::ReplicationStopped
    );
    assert_eq!(
        w.store.stop_reasons().first().copied(),
        Some(StopReason::StoppedByRequest)
    );
    assert!(matches!(
        w.stop(&w.a, &w.b, &host).await,
        Err(DomainError::NotFound(_))
    ));

    // Again, into the same destination: a new record, the old one stays listed.
    w.start(&w.a, &w.b, &host, None).await.unwrap();
    assert_eq!(
        w.listed(&w.a, &host).await,
        [state(&w.b.arn.id, "STOPPED"), state(&w.b.arn.id, "ACTIVE")]
    );
    assert_eq!(
        w.store
            .participant_in(&w.a.arn, &host)
            .await
            .unwrap()
            .replication_state
            .map(ReplicationState::as_str),
        Some("ACTIVE")
    );
}

#[tokio::test]
async fn the_source_leaving_without_a_window_stops_everything() {
    let w = world().await;
    let (host, _) = w.publisher(&w.a).await;
    w.start(&w.a, &w.b, &host, None).await.unwrap();
    w.live
        .on_media_signal(MediaSignal::Closed(w.media.peer(0), CloseCause::Timeout))
        .await;
    assert_eq!(w.media.closed_sources(), [SourceId(1)]);
    assert_eq!(w.listed(&w.a, &host).await, [state(&w.b.arn.id, "STOPPED")]);
    assert_eq!(
        w.store.stop_reasons().first().copied(),
        Some(StopReason::SourceStoppedPublishing)
    );
    assert_eq!(w.store.running_session(&w.a.arn).await, None);
    assert_eq!(w.store.running_session(&w.b.arn).await, None);
    assert_eq!(w.live.live_stage_count(), 0);
}

/// The reconnect window in virtual time: it runs from the publisher's drop, a
/// return inside it keeps everything, and it ends on the millisecond.
#[tokio::test]
async fn a_publisher_back_within_its_window_keeps_its_replicas() {
    let w = world().await;
    let (host, token) = w.publisher(&w.a).await;
    let a_session = w.store.running_session(&w.a.arn).await.unwrap();
    w.start(&w.a, &w.b, &host, Some(30)).await.unwrap();
    let (_, viewer_token) = w.token(&w.b).await;
    w.live
        .subscribe(viewer_token, host.clone(), "recvonly".into(), None)
        .await
        .unwrap();
    let viewer_peer = w.media.peer(1);

    // The publisher vanishes: A records it, nothing else moves.
    w.live
        .on_media_signal(MediaSignal::Closed(w.media.peer(0), CloseCause::Timeout))
        .await;
    assert_eq!(
        w.store.event_names_in(&w.a.arn, &host),
        [
            "JOINED",
            "PUBLISH_STARTED",
            "REPLICATION_STARTED",
            "PUBLISH_STOPPED",
            "LEFT"
        ]
    );
    assert!(w.media.closed_sources().is_empty());
    assert!(!w.media.closed_peers().contains(&viewer_peer));
    assert_eq!(
        w.store.running_session(&w.a.arn).await,
        Some(a_session.clone()),
        "the window holds the session"
    );
    assert_eq!(
        w.on_stage(&w.b)[0],
        (host.clone(), true),
        "the replica keeps its place"
    );
    assert_eq!(w.listed(&w.a, &host).await, [state(&w.b.arn.id, "ACTIVE")]);

    // Back with its token 29 s later: same source, same session, still ACTIVE.
    w.clock.advance(Duration::from_secs(29));
    w.live.publish(token, "offer".into(), None).await.unwrap();
    assert!(matches!(
        w.media.calls().last(),
        Some(MediaCall::Publish(SourceId(1), _))
    ));
    assert_eq!(
        w.store.running_session(&w.a.arn).await,
        Some(a_session.clone())
    );
    // Past the end of the first window: its timer fires and finds nothing to do.
    w.clock.advance(Duration::from_secs(5));
    eventually("the first window's timer ran", async || {
        w.clock.waiting() == 0
    })
    .await;
    assert_eq!(w.listed(&w.a, &host).await, [state(&w.b.arn.id, "ACTIVE")]);
    assert!(w.media.closed_sources().is_empty());
    assert_eq!(
        w.store.replicas(&w.a.arn, &host).await[0].source_session_id,
        a_session
    );
    let source = w.store.participant_in(&w.a.arn, &host).await.unwrap();
    assert_eq!(source.state, ParticipantState::Connected);
    assert_eq!(source.replication_state, Some(ReplicationState::Active));

    // Gone again, for good: a new window runs from this drop.
    let feeding = w.media.peer(2);
    w.live
        .on_media_signal(MediaSignal::Closed(feeding, CloseCause::RemoteClosed))
        .await;
    w.clock.advance(Duration::from_millis(29_999));
    assert_eq!(w.listed(&w.a, &host).await, [state(&w.b.arn.id, "ACTIVE")]);
    assert_eq!(w.on_stage(&w.b)[0], (host.clone(), true));
    w.clock.advance(Duration::from_millis(1));
    eventually("the window passed", async || {
        w.listed(&w.a, &host).await == [state(&w.b.arn.id, "STOPPED")]
    })
    .await;
    assert_eq!(
        w.store.stop_reasons().first().copied(),
        Some(StopReason::WindowPassed)
    );
    eventually("B's session ended", async || {
        w.store.running_session(&w.b.arn).await.is_none()
    })
    .await;
    assert_eq!(w.media.closed_sources(), [SourceId(1)]);
    assert!(w.media.closed_peers().contains(&viewer_peer));
    assert_eq!(w.store.running_session(&w.a.arn).await, None);
    let source = w.store.participant_in(&w.a.arn, &host).await.unwrap();
    assert_eq!(
        (source.replication_type, source.replication_state),
        (ReplicationType::Source, Some(ReplicationState::Stopped))
    );
    let a_session_record = &w.store.sessions(&w.a.arn).await[0];
    assert_eq!(
        a_session_record.end_time,
        Some(onstage_testkit::EPOCH + 64_000),
        "A's session ended when the window did"
    );
    eventually("both stages idle", async || w.live.live_stage_count() == 0).await;
}

#[tokio::test]
async fn disconnect_participant_of_the_source_or_of_the_replica() {
    let w = world().await;
    let c = w.new_stage().await;
    let (host, _) = w.publisher(&w.a).await;
    w.start(&w.a, &w.b, &host, Some(60)).await.unwrap();
    w.start(&w.a, &c, &host, Some(60)).await.unwrap();

    // The replica in B: that replication only, and no revocation in B.
    w.control
        .disconnect_participant(
            &account(),
            &w.b.arn.to_string(),
            &host,
            Some("off topic".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        w.listed(&w.a, &host).await,
        [state(&w.b.arn.id, "STOPPED"), state(&c.arn.id, "ACTIVE")]
    );
    assert_eq!(
        w.store.stop_reasons().first().copied(),
        Some(StopReason::ReplicaDisconnected)
    );
    assert_eq!(w.on_stage(&w.b), []);
    assert_eq!(w.on_stage(&c), [(host.clone(), true)]);
    w.start(&w.a, &w.b, &host, Some(60))
        .await
        .expect("B may have it back");

    // The source: everything at once, window or not.
    w.control
        .disconnect_participant(&account(), &w.a.arn.to_string(), &host, None)
        .await
        .unwrap();
    assert!(
        w.listed(&w.a, &host)
            .await
            .iter()
            .all(|(_, s)| s == "STOPPED")
    );
    assert_eq!(w.media.closed_sources(), [SourceId(1)]);
    assert_eq!(w.on_stage(&w.b), []);
    assert_eq!(w.on_stage(&c), []);
    assert_eq!(w.live.live_stage_count(), 0);
}

#[tokio::test]
async fn delete_stage_stops_replications_into_and_out_of_it() {
    let w = world().await;
    let c = w.new_stage().await;
    let (host, _) = w.publisher(&w.a).await;
    w.start(&w.a, &w.b, &host, Some(30)).await.unwrap();
    w.start(&w.a, &c, &host, Some(30)).await.unwrap();

    // A destination: its replication stays listed, STOPPED, under the source.
    w.control
        .delete_stage(&account(), &w.b.arn.to_string())
        .await
        .unwrap();
    assert_eq!(
        w.listed(&w.a, &host).await,
        [state(&w.b.arn.id, "STOPPED"), state(&c.arn.id, "ACTIVE")]
    );
    assert_eq!(
        w.store.stop_reasons().first().copied(),
        Some(StopReason::DestinationStageDeleted)
    );
    assert_eq!(w.on_stage(&w.a), [(host.clone(), true)]);

    // The source: its records go with it, and the replica leaves C.
    w.control
        .delete_stage(&account(), &w.a.arn.to_string())
        .await
        .unwrap();
    assert!(w.listed(&w.a, &host).await.is_empty());
    assert_eq!(w.on_stage(&c), []);
    assert_eq!(
        w.store.event_names_in(&c.arn, &host),
        ["JOINED", "PUBLISH_STARTED", "PUBLISH_STOPPED", "LEFT"]
    );
    assert_eq!(w.store.running_session(&c.arn).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replications_in_opposite_directions_do_not_deadlock() {
    let w = world().await;
    let (host_a, _) = w.publisher(&w.a).await;
    let (host_b, _) = w.publisher(&w.b).await;
    for _ in 0..20 {
        let (one, two) = tokio::join!(
            w.start(&w.a, &w.b, &host_a, None),
            w.start(&w.b, &w.a, &host_b, None)
        );
        one.unwrap();
        two.unwrap();
        let (one, two) = tokio::join!(w.stop(&w.a, &w.b, &host_a), w.stop(&w.b, &w.a, &host_b));
        one.unwrap();
        two.unwrap();
    }
    assert_eq!(w.listed(&w.a, &host_a).await.len(), 20);
}

#[tokio::test]
async fn shutdown_stops_every_replication() {
    let w = world().await;
    let (host, _) = w.publisher(&w.a).await;
    w.start(&w.a, &w.b, &host, Some(30)).await.unwrap();
    w.live.shutdown().await;
    assert_eq!(w.listed(&w.a, &host).await, [state(&w.b.arn.id, "STOPPED")]);
    assert_eq!(
        w.store.stop_reasons().first().copied(),
        Some(StopReason::ServerShutdown)
    );
    assert_eq!(w.store.running_session(&w.a.arn).await, None);
    assert_eq!(w.store.running_session(&w.b.arn).await, None);
}
